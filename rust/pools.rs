//! Pools, their classes, and the ordered rules that pick the pool of a message (or of each of
//! its recipients): compiled once from the configuration (`Routing::compile`), evaluated by the
//! policy as part of every decision (`Routing::route`) without allocating.
//!
//! **Classes.** Every pool is of a class (`PoolClass`): `normal` (mail known to be good only),
//! `high-risk`, or `relay` (forwarded mail whose sender the relay cannot vouch for). The policy
//! gives each message a class from its reasons (`Reason::escalation`, one row per reason in
//! `policy.rs`): any reason that makes it high risk gives `high-risk`; else a reason of the relay
//! class gives `relay`; else `normal`.
//!
//! **Rules choose a pool within the message's class.** A rule matches only mail of its pool's
//! class, so no rule can send high-risk mail from a normal pool's addresses, whatever its
//! conditions say: that invariant does not depend on the rules being written well. Among the
//! rules of its class, the first whose conditions all hold wins; when none does, the class's
//! default pool (`Policy::normal_pool`, `high_risk_pool`, `relay_pool`). A rule that names
//! recipient domains is evaluated per recipient, so one message can leave through several pools
//! (all of its class).
//!
//! **Refused at compile time**, each with the key at fault: a rule naming a pool that does not
//! exist; a rule whose conditions can only hold for mail of a worse class than its pool's (a
//! rule on `reasons = ["dsn"]` naming a normal pool could never match: it would only hide a
//! mistake); a class without a default (no such pool, and no rule without conditions for it);
//! a pool dedicated to a tenant named by a rule that does not match that tenant alone, or as a
//! default; unknown reason or report-kind names; `header_values` without a route header.
//!
//! Mail of the relay class goes through the high-risk class's rules and default when no pool of
//! the relay class exists (the safe side).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::dsn::ReportKind;
use crate::labels::{closed_set, Label};
use crate::policy::Reason;

type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

closed_set! {
    /// What a pool may send (`POOL_CLASSES` in Python). Public output: keep the names stable.
    pub enum PoolClass debug_as_name {
        /// Mail known to be good, only.
        Normal = "normal",
        /// DSNs, spam, mail from domains without records: anything with a high-risk reason.
        HighRisk = "high-risk",
        /// Forwarded or relayed mail the relay cannot vouch for (a reason of this class).
        Relay = "relay",
    }
}

impl PoolClass {
    /// Worse classes rank higher: a message's class is the worst its reasons give.
    pub const fn rank(self) -> u8 {
        match self {
            PoolClass::Normal => 0,
            PoolClass::Relay => 1,
            PoolClass::HighRisk => 2,
        }
    }

    /// The worse of two classes.
    pub const fn worst(self, other: PoolClass) -> PoolClass {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A configured name (a pool's, a rule's): shared, so that a decision carries it without a copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn new(name: &str) -> Self {
        Name(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// `name` quoted as the configuration's own messages quote names (Python's `repr` of a plain string).
pub(crate) fn q(name: &str) -> String {
    format!("'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A problem with pools or rules: `key` is where (`rules[2].pool`, `normal_pool`: the key of
/// `[policy]` it names, `rule` the rule's position), `why` what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingError {
    pub rule: Option<usize>,
    pub field: &'static str,
    pub why: String,
}

impl RoutingError {
    fn at(field: &'static str, why: String) -> Self {
        RoutingError { rule: None, field, why }
    }

    fn rule(index: usize, field: &'static str, why: String) -> Self {
        RoutingError { rule: Some(index), field, why }
    }
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            Some(index) => write!(f, "rules[{index}].{}: {}", self.field, self.why),
            None => write!(f, "{}: {}", self.field, self.why),
        }
    }
}

/// A pool as configured: its name, its class, and the tenant it is dedicated to, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub class: PoolClass,
    pub tenant: Option<String>,
}

/// A rule as configured. Every condition that is set must hold (an empty list or None is no
/// condition); within a list, any one item is enough.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSpec {
    /// Its name in decisions, events and metrics; default `rules[N]`.
    pub name: Option<String>,
    pub pool: String,
    pub tenants: Vec<String>,
    /// `example.com` (that domain) or `*.example.com` (any domain below it).
    pub sender_domains: Vec<String>,
    /// As `sender_domains`; a rule with recipient domains is evaluated per recipient.
    pub recipient_domains: Vec<String>,
    /// Values of the policy's route header (one copy, from a trusted client), compared
    /// case-insensitively.
    pub header_values: Vec<String>,
    /// Bytes of the message, both bounds included.
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// Any one of these reasons (names from `Reason`).
    pub reasons: Vec<String>,
    /// Any one of these report kinds (names from `ReportKind`).
    pub report_kinds: Vec<String>,
}

/// Where the compiled rules and pools stand: pool and rule numbers index these.
#[derive(Clone, Debug)]
struct Pool {
    name: Name,
    class: PoolClass,
    tenant: Option<u16>,
}

/// Domains as a rule matches them: whole names, and parents whose every subdomain matches
/// (`*.example.com`). Lowercase ASCII (IDNA) or lowercase Unicode, as written.
#[derive(Clone, Debug, Default)]
struct DomainSet {
    exact: FastSet<Box<[u8]>>,
    parents: FastSet<Box<[u8]>>,
}

impl DomainSet {
    fn compile(patterns: &[String]) -> Result<Self, String> {
        let mut set = DomainSet::default();
        for pattern in patterns {
            let lowered = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
            let (parent, name) = match lowered.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lowered.as_str()),
            };
            if name.is_empty() || name.len() > MAX_DOMAIN || name.contains('*') || name.starts_with('.') || name.contains("..") {
                return Err(format!("not a domain or *.domain: {}", q(pattern)));
            }
            let bytes: Box<[u8]> = name.as_bytes().into();
            if parent {
                set.parents.insert(bytes);
            } else {
                set.exact.insert(bytes);
            }
        }
        Ok(set)
    }

    /// `domain` must be lowercased already (`Lowered`).
    fn matches(&self, domain: &[u8]) -> bool {
        if self.exact.contains(domain) {
            return true;
        }
        if self.parents.is_empty() {
            return false;
        }
        // Every proper parent: what follows each dot.
        let mut rest = domain;
        while let Some(dot) = memchr::memchr(b'.', rest) {
            rest = &rest[dot + 1..];
            if self.parents.contains(rest) {
                return true;
            }
        }
        false
    }
}

/// Longest domain name (RFC 1035: 253 characters in text form, without the final dot).
const MAX_DOMAIN: usize = 253;

/// A domain in lowercase, without allocating: the address's own bytes when they are lowercase
/// already (the usual case), else a copy on the stack. None for one too long to be a domain.
#[allow(clippy::large_enum_variant)] // on the stack on purpose: routing must not allocate
enum Lowered<'a> {
    Borrowed(&'a [u8]),
    Copied([u8; MAX_DOMAIN], usize),
}

impl<'a> Lowered<'a> {
    fn new(domain: &'a [u8]) -> Option<Self> {
        let domain = domain.strip_suffix(b".").unwrap_or(domain);
        if domain.is_empty() || domain.len() > MAX_DOMAIN {
            return None;
        }
        if !domain.iter().any(u8::is_ascii_uppercase) {
            return Some(Lowered::Borrowed(domain));
        }
        let mut bytes = [0; MAX_DOMAIN];
        for (to, from) in bytes.iter_mut().zip(domain) {
            *to = from.to_ascii_lowercase();
        }
        Some(Lowered::Copied(bytes, domain.len()))
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Lowered::Borrowed(bytes) => bytes,
            Lowered::Copied(bytes, len) => &bytes[..*len],
        }
    }
}

/// The domain of `local@domain` (after the last `@`; a closing `>` left out), or None.
pub fn domain_of(address: &str) -> Option<&str> {
    let bytes = address.as_bytes();
    let at = memchr::memrchr(b'@', bytes)?;
    let domain = address[at + 1..].trim_end();
    let domain = domain.strip_suffix('>').unwrap_or(domain);
    (!domain.is_empty()).then_some(domain)
}

#[derive(Clone, Debug)]
struct Rule {
    name: Name,
    pool: u16,
    class: PoolClass,
    /// Tenant numbers, any one of them; empty: any tenant (or none).
    tenants: Box<[u16]>,
    sender_domains: Option<DomainSet>,
    recipient_domains: Option<DomainSet>,
    /// Lowercased; empty: no condition.
    header_values: Box<[Box<str>]>,
    min_size: u64,
    max_size: u64,
    /// Bit per `Reason`, any one; 0: no condition.
    reasons: u64,
    /// Bit per `ReportKind`, any one; 0: no condition.
    report_kinds: u64,
}

impl Rule {
    fn unconditional(&self) -> bool {
        self.tenants.is_empty()
            && self.sender_domains.is_none()
            && self.recipient_domains.is_none()
            && self.header_values.is_empty()
            && self.min_size == 0
            && self.max_size == u64::MAX
            && self.reasons == 0
            && self.report_kinds == 0
    }

    /// Every condition but the recipient's domain.
    fn matches_message(&self, facts: &Facts<'_>, message: &MessageKeys<'_>) -> bool {
        (self.reasons == 0 || self.reasons & facts.reasons != 0)
            && (self.report_kinds == 0 || facts.report_kind.is_some_and(|k| self.report_kinds & bit(k as usize) != 0))
            && (self.min_size..=self.max_size).contains(&facts.size)
            && (self.tenants.is_empty() || message.tenant.is_some_and(|t| self.tenants.contains(&t)))
            && (self.header_values.is_empty() || facts.header.is_some_and(|v| self.header_values.iter().any(|h| h.eq_ignore_ascii_case(v))))
            && self
                .sender_domains
                .as_ref()
                .map_or(true, |set| message.sender_domain.as_ref().is_some_and(|d| set.matches(d.as_bytes())))
    }
}

const fn bit(index: usize) -> u64 {
    1 << index
}

/// A bit per member of a closed set named in `names` (its place in the table, which is the
/// member's discriminant); `what` names the set in the error.
fn name_bits<T: Label + PartialEq>(names: &[String], what: &str) -> Result<u64, String> {
    const { assert!(T::ALL.len() <= 64, "a closed set of more than 64 names does not fit a mask") };
    let mut bits = 0;
    for name in names {
        match T::ALL.iter().position(|member| member.as_str() == name) {
            Some(position) => bits |= bit(position),
            None => {
                let known = T::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
                return Err(format!("no {what} named {} (expected one of {known})", q(name)));
            }
        }
    }
    Ok(bits)
}

/// What a rule is matched against, about one message.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The message's class (from its reasons).
    pub class: PoolClass,
    pub tenant: Option<&'a str>,
    /// The envelope sender's address (its domain is matched).
    pub mail_from: Option<&'a str>,
    /// The route header's value: present once, from a trusted client.
    pub header: Option<&'a str>,
    pub size: u64,
    /// Bit per `Reason` (`reason_bits`).
    pub reasons: u64,
    pub report_kind: Option<ReportKind>,
}

/// The bits of `reasons`, as `Facts::reasons` wants them.
pub fn reason_bits(reasons: &[Reason]) -> u64 {
    reasons.iter().fold(0, |bits, r| bits | bit(*r as usize))
}

/// The message's facts that need a look-up, worked out once for all its rules and recipients.
struct MessageKeys<'a> {
    tenant: Option<u16>,
    sender_domain: Option<Lowered<'a>>,
}

/// Where a message (or a recipient) goes: a pool number and the rule that chose it (None: the
/// class's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub pool: u16,
    pub rule: Option<u16>,
}

/// Pools and rules, compiled.
#[derive(Clone, Debug)]
pub struct Routing {
    pools: Box<[Pool]>,
    rules: Box<[Rule]>,
    /// The default pool of each class (by `PoolClass` index), after the relay class's fallback.
    defaults: [u16; 3],
    /// The class whose rules and default route each class (relay -> high-risk without relay pools).
    routes_as: [PoolClass; 3],
    /// Tenants that rules or pools name, numbered.
    tenants: FastMap<Box<str>, u16>,
    recipient_rules: bool,
    sender_rules: bool,
}

/// The default pool of each class, by name: `relay` may be absent.
#[derive(Clone, Copy, Debug)]
pub struct Defaults<'a> {
    pub normal: &'a str,
    pub high_risk: &'a str,
    pub relay: Option<&'a str>,
}

impl Routing {
    /// Compiles `pools` and `rules`. `always` says which class each reason always gives under
    /// this policy (`Reason` -> the class it escalates to, with the policy's fallbacks applied);
    /// `has_route_header` whether `header_values` can ever match.
    pub fn compile(
        pools: &[PoolSpec],
        rules: &[RuleSpec],
        defaults: Defaults<'_>,
        always: impl Fn(Reason) -> PoolClass,
        has_route_header: bool,
    ) -> Result<Routing, RoutingError> {
        if pools.len() > usize::from(u16::MAX) || rules.len() > usize::from(u16::MAX) {
            return Err(RoutingError::at("rules", "too many pools or rules (at most 65535)".into()));
        }
        let mut tenants: FastMap<Box<str>, u16> = FastMap::default();
        let mut tenant_number = |name: &str| -> u16 {
            let next = u16::try_from(tenants.len()).unwrap_or(u16::MAX);
            *tenants.entry(name.into()).or_insert(next)
        };
        let mut compiled_pools = Vec::with_capacity(pools.len());
        let mut by_name: FastMap<&str, u16> = FastMap::default();
        for (index, pool) in pools.iter().enumerate() {
            if pool.name.trim().is_empty() {
                return Err(RoutingError::at("pools", "pool names must not be empty".into()));
            }
            let number = u16::try_from(index).unwrap_or(u16::MAX);
            if by_name.insert(pool.name.as_str(), number).is_some() {
                return Err(RoutingError::at("pools", format!("{} is defined twice", q(&pool.name))));
            }
            let tenant = pool.tenant.as_deref().map(&mut tenant_number);
            compiled_pools.push(Pool { name: Name::new(&pool.name), class: pool.class, tenant });
        }
        let defined = || pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");

        let mut compiled_rules: Vec<Rule> = Vec::with_capacity(rules.len());
        let mut names: FastMap<String, usize> = FastMap::default();
        for (index, spec) in rules.iter().enumerate() {
            let name = spec.name.clone().unwrap_or_else(|| format!("rules[{index}]"));
            if name.trim().is_empty() {
                return Err(RoutingError::rule(index, "name", "must not be empty".into()));
            }
            if let Some(other) = names.insert(name.clone(), index) {
                return Err(RoutingError::rule(index, "name", format!("{} also names rules[{other}]", q(&name))));
            }
            let Some(&pool) = by_name.get(spec.pool.as_str()) else {
                return Err(RoutingError::rule(index, "pool", format!("no pool named {} (defined: {})", q(&spec.pool), defined())));
            };
            let target = &compiled_pools[usize::from(pool)];
            let reasons = name_bits::<Reason>(&spec.reasons, "reason").map_err(|why| RoutingError::rule(index, "reasons", why))?;
            let report_kinds = name_bits::<ReportKind>(&spec.report_kinds, "report kind").map_err(|why| RoutingError::rule(index, "report_kinds", why))?;
            // The best class mail matching the rule can have; a pool of a better class would
            // never see it.
            let mut implied = PoolClass::Normal;
            if reasons != 0 {
                let best = Reason::ALL.iter().filter(|r| reasons & bit(**r as usize) != 0).map(|r| always(*r)).min_by_key(|c| c.rank());
                implied = implied.worst(best.unwrap_or(PoolClass::Normal));
            }
            if report_kinds != 0 && report_kinds & !bit(ReportKind::Dsn as usize) == 0 {
                implied = implied.worst(always(Reason::Dsn));
            }
            if implied.rank() > target.class.rank() {
                let on = if reasons != 0 { format!("reasons = {:?}", spec.reasons) } else { format!("report_kinds = {:?}", spec.report_kinds) };
                return Err(RoutingError::rule(
                    index,
                    "pool",
                    format!(
                        "{} is a {} pool, but the rule ({on}) matches only {} mail, which never leaves from a {} pool: name a {} pool",
                        q(&spec.pool), target.class, implied, target.class, implied
                    ),
                ));
            }
            let rule_tenants: Box<[u16]> = spec.tenants.iter().map(|t| tenant_number(t)).collect();
            if let Some(owner) = target.tenant {
                if rule_tenants.is_empty() || rule_tenants.iter().any(|t| *t != owner) {
                    let owner_name = pools[usize::from(pool)].tenant.as_deref().unwrap_or_default();
                    return Err(RoutingError::rule(
                        index,
                        "pool",
                        format!("{} is dedicated to tenant {}: the rule must have tenants = [{owner_name:?}]", q(&spec.pool), q(owner_name)),
                    ));
                }
            }
            if !spec.header_values.is_empty() && !has_route_header {
                return Err(RoutingError::rule(index, "header_values", "set policy.route_header: the header these values are of".into()));
            }
            let domains = |field: &'static str, patterns: &[String]| -> Result<Option<DomainSet>, RoutingError> {
                if patterns.is_empty() {
                    return Ok(None);
                }
                DomainSet::compile(patterns).map(Some).map_err(|why| RoutingError::rule(index, field, why))
            };
            let (min_size, max_size) = (spec.min_size.unwrap_or(0), spec.max_size.unwrap_or(u64::MAX));
            if min_size > max_size {
                return Err(RoutingError::rule(index, "max_size", format!("must not be below min_size ({min_size} bytes)")));
            }
            compiled_rules.push(Rule {
                name: Name::new(&name),
                pool,
                class: target.class,
                tenants: rule_tenants,
                sender_domains: domains("sender_domains", &spec.sender_domains)?,
                recipient_domains: domains("recipient_domains", &spec.recipient_domains)?,
                header_values: spec.header_values.iter().map(|v| v.trim().to_ascii_lowercase().into_boxed_str()).collect(),
                min_size,
                max_size,
                reasons,
                report_kinds,
            });
        }

        let has_class = |class: PoolClass| compiled_pools.iter().any(|p| p.class == class);
        let routes_as = [
            PoolClass::Normal,
            PoolClass::HighRisk,
            if has_class(PoolClass::Relay) { PoolClass::Relay } else { PoolClass::HighRisk },
        ];
        let mut default_pools = [0u16; 3];
        for (class, field, name) in [
            (PoolClass::Normal, "normal_pool", Some(defaults.normal)),
            (PoolClass::HighRisk, "high_risk_pool", Some(defaults.high_risk)),
            (PoolClass::Relay, "relay_pool", defaults.relay),
        ] {
            if routes_as[class.index()] != class {
                if let Some(name) = name {
                    return Err(RoutingError::at(field, format!("no pool of class {class} is defined (relay mail goes through the high-risk pools without one): {} cannot be its default", q(name))));
                }
                continue;
            }
            let found = name.and_then(|n| by_name.get(n).copied());
            let pool = match found {
                Some(pool) => {
                    let p = &compiled_pools[usize::from(pool)];
                    if p.class != class {
                        return Err(RoutingError::at(field, format!("{} is a {} pool: the default of {class} mail must be a {class} pool", q(&p.name), p.class)));
                    }
                    if p.tenant.is_some() {
                        let owner = pools[usize::from(pool)].tenant.as_deref().unwrap_or_default();
                        return Err(RoutingError::at(field, format!("{} is dedicated to tenant {}: a default pool is everybody's", q(&p.name), q(owner))));
                    }
                    pool
                }
                // No default pool: total only if a rule without conditions catches the class.
                None => match compiled_rules.iter().find(|r| r.class == class && r.unconditional()) {
                    Some(rule) => rule.pool,
                    None => {
                        let missing = match name {
                            Some(name) => format!("no pool named {} (defined: {})", q(name), defined()),
                            None => format!("no {field} is set"),
                        };
                        return Err(RoutingError::at(
                            field,
                            format!("{missing}, and no rule without conditions names a {class} pool: {class} mail that no rule matches needs a default pool"),
                        ));
                    }
                },
            };
            default_pools[class.index()] = pool;
        }
        default_pools[PoolClass::Relay.index()] = default_pools[routes_as[PoolClass::Relay.index()].index()];
        let recipient_rules = compiled_rules.iter().any(|r| r.recipient_domains.is_some());
        let sender_rules = compiled_rules.iter().any(|r| r.sender_domains.is_some());
        Ok(Routing { pools: compiled_pools.into(), rules: compiled_rules.into(), defaults: default_pools, routes_as, tenants, recipient_rules, sender_rules })
    }

    /// The two pools of a policy without rules: `normal` and `high-risk` by the given names.
    pub fn two_pools(normal: &str, high_risk: &str) -> Result<Routing, RoutingError> {
        let pools = [
            PoolSpec { name: normal.into(), class: PoolClass::Normal, tenant: None },
            PoolSpec { name: high_risk.into(), class: PoolClass::HighRisk, tenant: None },
        ];
        Routing::compile(&pools, &[], Defaults { normal, high_risk, relay: None }, |_| PoolClass::Normal, false)
    }

    /// Whether some rule names recipient domains (then each recipient is routed on its own).
    pub fn per_recipient(&self) -> bool {
        self.recipient_rules
    }

    pub fn pool_name(&self, pool: u16) -> &Name {
        &self.pools[usize::from(pool)].name
    }

    pub fn pool_class(&self, pool: u16) -> PoolClass {
        self.pools[usize::from(pool)].class
    }

    pub fn rule_name(&self, rule: u16) -> &Name {
        &self.rules[usize::from(rule)].name
    }

    /// (name, class, dedicated tenant) of every pool, in order.
    pub fn pools(&self) -> impl Iterator<Item = (&str, PoolClass, Option<&str>)> {
        self.pools.iter().map(|p| (p.name.as_str(), p.class, p.tenant.map(|t| self.tenant_name(t))))
    }

    /// Every rule's name, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    fn tenant_name(&self, number: u16) -> &str {
        self.tenants.iter().find(|(_, n)| **n == number).map_or("", |(name, _)| name)
    }

    /// The default pool of `class`.
    pub fn default_pool(&self, class: PoolClass) -> u16 {
        self.defaults[class.index()]
    }

    fn keys<'a>(&self, facts: &Facts<'a>) -> MessageKeys<'a> {
        MessageKeys {
            tenant: if self.tenants.is_empty() { None } else { facts.tenant.and_then(|t| self.tenants.get(t).copied()) },
            sender_domain: if self.sender_rules { facts.mail_from.and_then(domain_of).and_then(|d| Lowered::new(d.as_bytes())) } else { None },
        }
    }

    /// The pool of a message without recipient rules (or of one without recipients).
    pub fn route(&self, facts: &Facts<'_>) -> Choice {
        self.first_match(facts, &self.keys(facts), None)
    }

    /// The pool of each recipient, in order, by `choose` (called once per recipient); the
    /// message's facts are worked out once.
    pub fn route_each<'r>(&self, facts: &Facts<'_>, recipients: &'r [&'r str], mut each: impl FnMut(Choice)) {
        let keys = self.keys(facts);
        for recipient in recipients {
            let domain = domain_of(recipient).and_then(|d| Lowered::new(d.as_bytes()));
            each(self.first_match(facts, &keys, Some(domain.as_ref())));
        }
    }

    /// The first rule of the message's class whose conditions hold, else the class's default.
    /// `recipient`: None when routing the message as a whole (recipient rules never match),
    /// Some(None) for a recipient whose domain cannot be read.
    fn first_match(&self, facts: &Facts<'_>, keys: &MessageKeys<'_>, recipient: Option<Option<&Lowered<'_>>>) -> Choice {
        let class = self.routes_as[facts.class.index()];
        for (number, rule) in self.rules.iter().enumerate() {
            if rule.class != class || !rule.matches_message(facts, keys) {
                continue;
            }
            if let Some(set) = &rule.recipient_domains {
                let Some(Some(domain)) = recipient else { continue };
                if !set.matches(domain.as_bytes()) {
                    continue;
                }
            }
            // `compile` refuses more than u16::MAX rules.
            return Choice { pool: rule.pool, rule: u16::try_from(number).ok() };
        }
        Choice { pool: self.defaults[class.index()], rule: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, class: PoolClass) -> PoolSpec {
        PoolSpec { name: name.into(), class, tenant: None }
    }

    fn always(reason: Reason) -> PoolClass {
        match reason {
            Reason::Dsn
            | Reason::SpamScore
            | Reason::SenderDomainNoRecords
            | Reason::Unscannable
            | Reason::SenderDomainUnknown
            | Reason::DmarcFail
            | Reason::AuthUnknown
            | Reason::SrsBounce => PoolClass::HighRisk,
            Reason::RelayedSpfFail => PoolClass::Relay,
            Reason::SpamScoreUnavailable => PoolClass::Normal,
        }
    }

    fn pools() -> Vec<PoolSpec> {
        let mut acme = pool("acme-out", PoolClass::Normal);
        acme.tenant = Some("acme".into());
        vec![pool("normal", PoolClass::Normal), pool("high-risk", PoolClass::HighRisk), pool("gmail", PoolClass::Normal), pool("bulk", PoolClass::HighRisk), acme]
    }

    const DEFAULTS: Defaults<'static> = Defaults { normal: "normal", high_risk: "high-risk", relay: None };

    fn compile(rules: &[RuleSpec]) -> Result<Routing, RoutingError> {
        Routing::compile(&pools(), rules, DEFAULTS, always, true)
    }

    fn facts(class: PoolClass) -> Facts<'static> {
        Facts { class, tenant: None, mail_from: None, header: None, size: 100, reasons: 0, report_kind: None }
    }

    fn names(routing: &Routing, choice: Choice) -> (&str, Option<&str>) {
        (routing.pool_name(choice.pool).as_str(), choice.rule.map(|r| routing.rule_name(r).as_str()))
    }

    #[test]
    fn a_rule_matches_only_mail_of_its_pools_class_and_the_first_match_wins() {
        let routing = compile(&[
            RuleSpec { pool: "gmail".into(), recipient_domains: vec!["gmail.com".into(), "*.google.com".into()], ..Default::default() },
            RuleSpec { name: Some("big".into()), pool: "bulk".into(), min_size: Some(1000), ..Default::default() },
            RuleSpec { name: Some("acme".into()), pool: "acme-out".into(), tenants: vec!["acme".into()], ..Default::default() },
        ])
        .unwrap();
        let normal = facts(PoolClass::Normal);
        assert_eq!(names(&routing, routing.route(&normal)), ("normal", None));
        let mut seen = Vec::new();
        routing.route_each(&normal, &["a@GMAIL.com", "b@mail.google.com.", "c@google.com", "nobody"], |c| seen.push(names(&routing, c)));
        assert_eq!(seen, [("gmail", Some("rules[0]")), ("gmail", Some("rules[0]")), ("normal", None), ("normal", None)]);
        // High-risk mail never takes the normal pool's rule, however its recipients look.
        let risky = Facts { size: 5000, ..facts(PoolClass::HighRisk) };
        let mut seen = Vec::new();
        routing.route_each(&risky, &["a@gmail.com"], |c| seen.push(names(&routing, c)));
        assert_eq!(seen, [("bulk", Some("big"))]);
        assert_eq!(names(&routing, routing.route(&Facts { size: 10, ..risky })), ("high-risk", None));
        let acme = Facts { tenant: Some("acme"), ..normal };
        assert_eq!(names(&routing, routing.route(&acme)), ("acme-out", Some("acme")));
        assert_eq!(names(&routing, routing.route(&Facts { class: PoolClass::HighRisk, ..acme })), ("high-risk", None));
        assert_eq!(names(&routing, routing.route(&Facts { tenant: Some("other"), ..normal })), ("normal", None));
        // Relay mail without relay pools goes the high-risk way.
        assert_eq!(names(&routing, routing.route(&facts(PoolClass::Relay))), ("high-risk", None));
    }

    #[test]
    fn conditions_on_senders_headers_reasons_and_report_kinds() {
        let routing = compile(&[
            RuleSpec { pool: "gmail".into(), sender_domains: vec!["*.news.example".into()], header_values: vec!["Bulk".into()], ..Default::default() },
            RuleSpec { pool: "bulk".into(), reasons: vec!["dsn".into()], ..Default::default() },
            RuleSpec { pool: "bulk".into(), report_kinds: vec!["arf".into(), "dsn".into()], max_size: Some(50), ..Default::default() },
        ])
        .unwrap();
        let normal = Facts { mail_from: Some("x@a.NEWS.example"), header: Some("bulk"), ..facts(PoolClass::Normal) };
        assert_eq!(names(&routing, routing.route(&normal)), ("gmail", Some("rules[0]")));
        assert_eq!(routing.route(&Facts { header: Some("other"), ..normal }).rule, None);
        assert_eq!(routing.route(&Facts { header: None, ..normal }).rule, None);
        assert_eq!(routing.route(&Facts { mail_from: Some("x@news.example"), ..normal }).rule, None);
        let dsn = Facts { reasons: reason_bits(&[Reason::SpamScore, Reason::Dsn]), report_kind: Some(ReportKind::Dsn), ..facts(PoolClass::HighRisk) };
        assert_eq!(routing.route(&dsn).rule, Some(1));
        let spam = Facts { reasons: reason_bits(&[Reason::SpamScore]), report_kind: Some(ReportKind::Arf), size: 50, ..dsn };
        assert_eq!(routing.route(&spam).rule, Some(2));
        assert_eq!(routing.route(&Facts { size: 51, ..spam }).rule, None);
    }

    #[test]
    fn each_mistake_is_refused_at_its_key() {
        let refused = |rules: &[RuleSpec]| compile(rules).unwrap_err().to_string();
        assert!(refused(&[RuleSpec { pool: "nope".into(), ..Default::default() }]).starts_with("rules[0].pool: no pool named 'nope' (defined: normal, high-risk"));
        let risky = refused(&[RuleSpec { pool: "bulk".into(), ..Default::default() }, RuleSpec { pool: "gmail".into(), reasons: vec!["dsn".into()], ..Default::default() }]);
        assert!(risky.starts_with("rules[1].pool: 'gmail' is a normal pool, but the rule (reasons = [\"dsn\"]) matches only high-risk mail"), "{risky}");
        assert!(refused(&[RuleSpec { pool: "gmail".into(), report_kinds: vec!["dsn".into()], ..Default::default() }]).contains("matches only high-risk mail"));
        // A reason that is not always high-risk may go with a normal pool.
        compile(&[RuleSpec { pool: "gmail".into(), reasons: vec!["spam-score-unavailable".into()], ..Default::default() }]).unwrap();
        compile(&[RuleSpec { pool: "gmail".into(), report_kinds: vec!["dsn".into(), "mdn".into()], ..Default::default() }]).unwrap();
        assert!(refused(&[RuleSpec { pool: "acme-out".into(), ..Default::default() }]).starts_with("rules[0].pool: 'acme-out' is dedicated to tenant 'acme'"));
        assert!(refused(&[RuleSpec { pool: "acme-out".into(), tenants: vec!["acme".into(), "other".into()], ..Default::default() }]).contains("dedicated"));
        assert!(refused(&[RuleSpec { pool: "gmail".into(), reasons: vec!["odd".into()], ..Default::default() }]).starts_with("rules[0].reasons: no reason named 'odd'"));
        assert!(refused(&[RuleSpec { pool: "gmail".into(), report_kinds: vec!["odd".into()], ..Default::default() }]).starts_with("rules[0].report_kinds: no report kind"));
        assert!(refused(&[RuleSpec { pool: "gmail".into(), min_size: Some(2), max_size: Some(1), ..Default::default() }]).starts_with("rules[0].max_size"));
        assert!(refused(&[RuleSpec { pool: "gmail".into(), sender_domains: vec!["a.*.b".into()], ..Default::default() }]).starts_with("rules[0].sender_domains"));
        let twice = refused(&[RuleSpec { name: Some("x".into()), pool: "gmail".into(), ..Default::default() }, RuleSpec { name: Some("x".into()), pool: "bulk".into(), ..Default::default() }]);
        assert_eq!(twice, "rules[1].name: 'x' also names rules[0]");
        let no_header = Routing::compile(&pools(), &[RuleSpec { pool: "gmail".into(), header_values: vec!["a".into()], ..Default::default() }], DEFAULTS, always, false);
        assert!(no_header.unwrap_err().to_string().starts_with("rules[0].header_values"));
    }

    #[test]
    fn every_class_needs_a_default_or_a_rule_without_conditions() {
        let without = Defaults { normal: "out", ..DEFAULTS };
        let error = Routing::compile(&pools(), &[], without, always, false).unwrap_err();
        assert_eq!(error.field, "normal_pool");
        assert!(error.why.starts_with("no pool named 'out'"), "{error}");
        // A rule without conditions is the default.
        let routing = Routing::compile(&pools(), &[RuleSpec { pool: "gmail".into(), ..Default::default() }], without, always, false).unwrap();
        assert_eq!(names(&routing, routing.route(&facts(PoolClass::Normal))), ("gmail", Some("rules[0]")));
        // A default of the wrong class, or a tenant's.
        let wrong = Routing::compile(&pools(), &[], Defaults { normal: "bulk", ..DEFAULTS }, always, false).unwrap_err();
        assert_eq!(wrong.to_string(), "normal_pool: 'bulk' is a high-risk pool: the default of normal mail must be a normal pool");
        let owned = Routing::compile(&pools(), &[], Defaults { normal: "acme-out", ..DEFAULTS }, always, false).unwrap_err();
        assert!(owned.to_string().contains("dedicated to tenant 'acme'"));
        // The relay class: its default when relay pools exist; none to name without them.
        let mut with_relay = pools();
        with_relay.push(pool("fwd", PoolClass::Relay));
        let relay = Defaults { relay: Some("fwd"), ..DEFAULTS };
        let routing = Routing::compile(&with_relay, &[], relay, always, false).unwrap();
        assert_eq!(names(&routing, routing.route(&facts(PoolClass::Relay))), ("fwd", None));
        assert!(Routing::compile(&with_relay, &[], DEFAULTS, always, false).unwrap_err().to_string().starts_with("relay_pool: no relay_pool is set"));
        assert!(Routing::compile(&pools(), &[], relay, always, false).unwrap_err().to_string().starts_with("relay_pool: no pool of class relay"));
    }

    #[test]
    fn pool_classes_rank() {
        crate::labels::check_table(PoolClass::from_name);
        assert_eq!(PoolClass::Normal.worst(PoolClass::Relay), PoolClass::Relay);
        assert_eq!(PoolClass::HighRisk.worst(PoolClass::Relay), PoolClass::HighRisk);
        assert_eq!(domain_of("<a@b.example>"), Some("b.example"));
        assert_eq!(domain_of("\"x@y\"@B.Example. "), Some("B.Example."));
        assert_eq!(domain_of("a@"), None);
        assert_eq!(domain_of("nobody"), None);
        assert_eq!(Lowered::new(b"B.Example.").map(|l| l.as_bytes().to_vec()), Some(b"b.example".to_vec()));
        assert!(Lowered::new(&[b'a'; 254]).is_none());
    }
}
