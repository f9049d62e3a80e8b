//! Pools and routing rules (rust/pools.rs) built from arbitrary bytes, then a message decided
//! under them: compiling never panics (it refuses with an error), and whatever the rules say, a
//! message with a high-risk reason gets a high-risk pool for itself and for every recipient, a
//! tenant's dedicated pool carries only that tenant's mail, and every recipient gets a pool.
#![no_main]

use deliverypool::dsn::ReportKind;
use deliverypool::policy::{classify, DomainStatus, Envelope, Policy, Reason};
use deliverypool::pools::{PoolClass, PoolSpec, RuleSpec};
use libfuzzer_sys::fuzz_target;

/// Reads the input a byte or a short string at a time (zeros once it runs out).
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.byte()) % items.len()]
    }

    /// A short string: mostly from a small alphabet that makes domains and names collide,
    /// sometimes raw bytes.
    fn text(&mut self) -> String {
        let len = usize::from(self.byte() % 12);
        if self.byte() % 8 == 0 {
            let raw: Vec<u8> = (0..len).map(|_| self.byte()).collect();
            return String::from_utf8_lossy(&raw).into_owned();
        }
        (0..len).map(|_| self.pick(&['a', 'b', '.', '*', 'A', 'x', '-', '@', 'é'])).collect()
    }

    fn texts(&mut self) -> Vec<String> {
        (0..self.byte() % 3).map(|_| self.text()).collect()
    }
}

const TENANTS: [&str; 3] = ["acme", "globex", "x"];
const CLASSES: [PoolClass; 3] = [PoolClass::Normal, PoolClass::HighRisk, PoolClass::Relay];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut pools = vec![
        PoolSpec { name: "normal".into(), class: PoolClass::Normal, tenant: None },
        PoolSpec { name: "high-risk".into(), class: PoolClass::HighRisk, tenant: None },
    ];
    for i in 0..input.byte() % 5 {
        let tenant = (input.byte() % 3 == 0).then(|| input.pick(&TENANTS).to_owned());
        pools.push(PoolSpec { name: format!("p{i}"), class: input.pick(&CLASSES), tenant });
    }
    let names: Vec<String> = pools.iter().map(|p| p.name.clone()).chain(["nope".to_owned()]).collect();
    let mut rules = Vec::new();
    for _ in 0..input.byte() % 8 {
        let pool = usize::from(input.byte()) % names.len();
        let mut rule = RuleSpec { pool: names[pool].clone(), ..RuleSpec::default() };
        let mask = input.byte();
        if mask & 1 != 0 {
            rule.tenants = (0..1 + input.byte() % 2).map(|_| input.pick(&TENANTS).to_owned()).collect();
        }
        if mask & 2 != 0 {
            rule.sender_domains = input.texts();
        }
        if mask & 4 != 0 {
            rule.recipient_domains = input.texts();
        }
        if mask & 8 != 0 {
            rule.header_values = input.texts();
        }
        if mask & 16 != 0 {
            rule.reasons = (0..1 + input.byte() % 2).map(|_| input.pick(Reason::ALL).as_str().to_owned()).collect();
        }
        if mask & 32 != 0 {
            rule.report_kinds = (0..1 + input.byte() % 2).map(|_| input.pick(ReportKind::ALL).as_str().to_owned()).collect();
        }
        if mask & 64 != 0 {
            rule.min_size = Some(u64::from(input.byte()) * 8);
        }
        if mask & 128 != 0 {
            rule.max_size = Some(u64::from(input.byte()) * 16);
        }
        if input.byte() % 4 == 0 {
            rule.name = Some(input.text());
        }
        rules.push(rule);
    }
    let relay = pools.iter().find(|p| p.class == PoolClass::Relay && p.tenant.is_none()).map(|p| p.name.clone());
    let policy = Policy { pools: pools.clone(), rules, relay_pool: relay, route_header: Some("x-stream".into()), ..Policy::default() };
    let Ok(policy) = policy.validated() else { return };

    let tenant = [None, Some("acme"), Some("globex"), Some("other")][usize::from(input.byte() % 4)];
    let mail_from = input.text();
    let recipients_owned: Vec<String> = (0..input.byte() % 4).map(|_| input.text()).collect();
    let recipients: Vec<&str> = recipients_owned.iter().map(String::as_str).collect();
    let sender_domain = [None, Some(DomainStatus::HasRecords), Some(DomainStatus::NoRecords), Some(DomainStatus::Unknown)][usize::from(input.byte() % 4)];
    let score = [None, Some(1.0), Some(9.0)][usize::from(input.byte() % 3)];
    let untrusted_route_header = input.byte() % 2 == 0;
    let message = input.0;
    let envelope = Envelope { mail_from: Some(&mail_from), score, tenant, sender_domain, recipients: &recipients, untrusted_route_header, ..Envelope::default() };
    let decision = classify(message, &envelope, &policy).expect("a finite score");
    let class_of = |name: &str| pools.iter().find(|p| p.name == name).map(|p| (p.class, p.tenant.clone())).expect("a configured pool");
    let (class, owner) = class_of(&decision.pool);
    assert_eq!(class, decision.pool_class);
    if decision.high_risk {
        assert_eq!(class, PoolClass::HighRisk, "a high-risk message got {:?}", decision.pool);
    }
    assert!(owner.is_none() || owner.as_deref() == tenant);
    assert!(decision.recipient_pools.is_empty() || decision.recipient_pools.len() == recipients.len());
    for pool in &decision.recipient_pools {
        let (recipient_class, owner) = class_of(pool);
        assert_eq!(recipient_class, class);
        assert!(owner.is_none() || owner.as_deref() == tenant);
    }
});
