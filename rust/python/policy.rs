//! `Policy`, `classify()`, `classify_many()` and the frozen `Decision`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use rayon::prelude::*;

use super::errors::{to_py_err, Error};
use super::untracked;
use super::scan::recipients_tuple;
use crate::address::Address;
use crate::dsn::DsnVerdict;
use crate::auth::dmarc::{DmarcResult, Policy as DmarcPolicy};
use crate::auth::spf::SpfResult;
use crate::labels::Label;
use crate::policy::{self, AuthFacts, Decision, DomainStatus, Envelope, FallbackPool, Policy};
use crate::pools::{q, Name, PoolClass, PoolSpec, RoutingError, RuleSpec};

#[pyclass(frozen, name = "Policy", module = "deliverypool")]
pub struct PyPolicy(pub Arc<Policy>);

fn default_policy() -> Arc<Policy> {
    static DEFAULT: OnceLock<Arc<Policy>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::new(Policy::default())).clone()
}

fn policy_or_default(policy: Option<&Bound<'_, PyPolicy>>) -> Arc<Policy> {
    policy.map_or_else(default_policy, |p| p.get().0.clone())
}

#[pymethods]
impl PyPolicy {
    #[new]
    #[pyo3(signature = (*, normal_pool="normal", high_risk_pool="high-risk", threshold=5.0, tenant_thresholds=None, score_header=None, unknown_domain_pool="high-risk", score_unavailable_pool="normal", unscannable_pool="high-risk", pools=None, pool_tenants=None, rules=None, relay_pool=None, route_header=None, auth_unknown_pool="high-risk"))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments, one per policy field
    fn new(
        py: Python<'_>,
        normal_pool: &str,
        high_risk_pool: &str,
        threshold: f64,
        tenant_thresholds: Option<BTreeMap<String, f64>>,
        score_header: Option<String>,
        unknown_domain_pool: &str,
        score_unavailable_pool: &str,
        unscannable_pool: &str,
        pools: Option<&Bound<'_, PyDict>>,
        pool_tenants: Option<BTreeMap<String, String>>,
        rules: Option<&Bound<'_, PyAny>>,
        relay_pool: Option<String>,
        route_header: Option<String>,
        auth_unknown_pool: &str,
    ) -> PyResult<Self> {
        let auth_unknown_pool = FallbackPool::parse("auth_unknown_pool", auth_unknown_pool).map_err(|e| to_py_err(py, e))?;
        let unknown_domain_pool = FallbackPool::parse("unknown_domain_pool", unknown_domain_pool).map_err(|e| to_py_err(py, e))?;
        let score_unavailable_pool = FallbackPool::parse("score_unavailable_pool", score_unavailable_pool).map_err(|e| to_py_err(py, e))?;
        let unscannable_pool = FallbackPool::parse("unscannable_pool", unscannable_pool).map_err(|e| to_py_err(py, e))?;
        let pools = pool_specs(py, pools, pool_tenants)?;
        let rules = match rules {
            Some(rules) => rules.try_iter()?.enumerate().map(|(i, rule)| rule_spec(py, i, &rule?)).collect::<PyResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        let policy = Policy {
            normal_pool: normal_pool.to_owned(),
            high_risk_pool: high_risk_pool.to_owned(),
            relay_pool,
            pools,
            rules,
            route_header,
            threshold,
            tenant_thresholds: tenant_thresholds.unwrap_or_default(),
            score_header,
            unknown_domain_pool,
            score_unavailable_pool,
            unscannable_pool,
            auth_unknown_pool,
            routing: Policy::default().routing,
        };
        Ok(PyPolicy(Arc::new(policy.validated().map_err(|e| to_py_err(py, e))?)))
    }

    #[getter]
    fn relay_pool(&self) -> Option<&str> {
        self.0.relay_pool.as_deref()
    }
    /// Every pool's class, by name, in order.
    #[getter]
    fn pools<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, class, _) in self.0.routing.pools() {
            dict.set_item(name, class.as_str())?;
        }
        Ok(dict)
    }
    /// The tenant each dedicated pool belongs to, by pool name.
    #[getter]
    fn pool_tenants<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, _, tenant) in self.0.routing.pools() {
            if let Some(tenant) = tenant {
                dict.set_item(name, tenant)?;
            }
        }
        Ok(dict)
    }
    /// Every rule's name, in order.
    #[getter]
    fn rules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.0.routing.rule_names().collect::<Vec<_>>())
    }
    /// Lowercased name of the route header rules match, or None.
    #[getter]
    fn route_header(&self) -> Option<&str> {
        self.0.route_header.as_deref()
    }
    /// Whether a rule names recipient domains: then `classify` needs the recipients, and routes
    /// each on its own.
    #[getter]
    fn per_recipient(&self) -> bool {
        self.0.routing.per_recipient()
    }

    #[getter]
    fn normal_pool(&self) -> &str {
        &self.0.normal_pool
    }
    #[getter]
    fn high_risk_pool(&self) -> &str {
        &self.0.high_risk_pool
    }
    #[getter]
    fn threshold(&self) -> f64 {
        self.0.threshold
    }
    #[getter]
    fn tenant_thresholds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (tenant, threshold) in &self.0.tenant_thresholds {
            dict.set_item(tenant, threshold)?;
        }
        Ok(dict)
    }
    /// Lowercased name of the trusted spam-score header, or None.
    #[getter]
    fn score_header(&self) -> Option<&str> {
        self.0.score_header.as_deref()
    }
    #[getter]
    fn unknown_domain_pool(&self) -> &'static str {
        self.0.unknown_domain_pool.as_str()
    }
    #[getter]
    fn score_unavailable_pool(&self) -> &'static str {
        self.0.score_unavailable_pool.as_str()
    }
    #[getter]
    fn unscannable_pool(&self) -> &'static str {
        self.0.unscannable_pool.as_str()
    }
    #[getter]
    fn auth_unknown_pool(&self) -> &'static str {
        self.0.auth_unknown_pool.as_str()
    }
    /// The threshold that applies to `tenant`.
    #[pyo3(signature = (tenant=None))]
    fn threshold_for(&self, tenant: Option<&str>) -> f64 {
        self.0.threshold_for(tenant)
    }
    fn __repr__(&self) -> String {
        let p = &self.0;
        format!(
            "Policy(normal_pool={:?}, high_risk_pool={:?}, threshold={}, tenant_thresholds={:?}, score_header={:?}, unknown_domain_pool={:?}, score_unavailable_pool={:?}, unscannable_pool={:?})",
            p.normal_pool,
            p.high_risk_pool,
            p.threshold,
            p.tenant_thresholds,
            p.score_header,
            self.unknown_domain_pool(),
            self.score_unavailable_pool(),
            self.unscannable_pool()
        )
    }
}

/// What SPF and DMARC found about a message, as routing reads it (`classify(auth=...)`), and
/// as `Decision.auth` gives it back.
#[pyclass(frozen, name = "AuthFacts", module = "deliverypool")]
#[derive(Clone)]
pub struct PyAuthFacts(pub AuthFacts);

/// `value` as a member of the closed set `T`, or a `PolicyError` naming `what` and the set.
fn member<T: Label + Copy>(py: Python<'_>, what: &'static str, allowed: &'static str, value: &str) -> PyResult<T> {
    T::ALL
        .iter()
        .copied()
        .find(|m| m.as_str() == value)
        .ok_or_else(|| to_py_err(py, policy::Error::BadOption { what, value: value.to_owned(), allowed }))
}

#[pymethods]
impl PyAuthFacts {
    #[new]
    #[pyo3(signature = (*, spf=None, own_sender=false, dmarc=None, disposition="none", unsure=false, srs_bounce=false))]
    fn new(py: Python<'_>, spf: Option<&str>, own_sender: bool, dmarc: Option<&str>, disposition: &str, unsure: bool, srs_bounce: bool) -> PyResult<Self> {
        const SPF: &str = "pass, fail, softfail, neutral, none, temperror, permerror";
        let spf = spf.map(|v| member::<SpfResult>(py, "spf result", SPF, v)).transpose()?;
        let dmarc = dmarc.map(|v| member::<DmarcResult>(py, "dmarc result", "pass, fail, none, temperror, permerror", v)).transpose()?;
        let disposition = member::<DmarcPolicy>(py, "dmarc disposition", "none, quarantine, reject", disposition)?;
        Ok(PyAuthFacts(AuthFacts { spf, own_sender, dmarc, disposition, unsure, srs_bounce }))
    }
    /// SPF of the MAIL FROM identity at acceptance, or None when it was not evaluated.
    #[getter]
    fn spf(&self) -> Option<&'static str> {
        self.0.spf.map(SpfResult::as_str)
    }
    /// The envelope sender's domain is one of the tenant's own.
    #[getter]
    fn own_sender(&self) -> bool {
        self.0.own_sender
    }
    /// DMARC as the destination will reach it, or None when it was not evaluated.
    #[getter]
    fn dmarc(&self) -> Option<&'static str> {
        self.0.dmarc.map(DmarcResult::as_str)
    }
    /// What the From domain asks the destination to do: none, quarantine, reject.
    #[getter]
    fn disposition(&self) -> &'static str {
        self.0.disposition.as_str()
    }
    /// The DMARC failure rests on an identifier whose check failed (temperror).
    #[getter]
    fn unsure(&self) -> bool {
        self.0.unsure
    }
    #[getter]
    fn srs_bounce(&self) -> bool {
        self.0.srs_bounce
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyAuthFacts>().is_ok_and(|o| o.get().0 == self.0)
    }
    fn __hash__(&self) -> u64 {
        let f = &self.0;
        let mut h = (f.spf.map_or(0, |r| r as u64 + 1) << 8) | (f.dmarc.map_or(0, |r| r as u64 + 1) << 4) | f.disposition as u64;
        h = (h << 3) | (u64::from(f.own_sender) << 2) | (u64::from(f.unsure) << 1) | u64::from(f.srs_bounce);
        h
    }
    fn __repr__(&self) -> String {
        let f = &self.0;
        format!(
            "AuthFacts(spf={:?}, own_sender={}, dmarc={:?}, disposition={:?}, unsure={}, srs_bounce={})",
            f.spf.map(SpfResult::as_str),
            f.own_sender,
            f.dmarc.map(DmarcResult::as_str),
            f.disposition.as_str(),
            f.unsure,
            f.srs_bounce
        )
    }
}

/// Shares the verdict with the `Decision` it came from: `Decision.dsn` hands out a new view
/// each time without copying the signals and recipients.
#[pyclass(frozen, name = "DsnVerdict", module = "deliverypool")]
pub struct PyDsnVerdict(pub Arc<DsnVerdict>);

#[pymethods]
impl PyDsnVerdict {
    /// delivery-status, global-delivery-status or non-standard.
    #[getter]
    fn kind(&self) -> &'static str {
        self.0.kind.as_str()
    }
    #[getter]
    fn signals<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.0.signals.iter().map(|s| s.as_str()))
    }
    /// Points of the signals that fired over the threshold: 1.0 is just enough.
    #[getter]
    fn strength(&self) -> f64 {
        self.0.strength
    }
    #[getter]
    fn recipients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        recipients_tuple(py, &self.0.recipients)
    }
    fn __repr__(&self) -> String {
        format!("DsnVerdict(kind={:?}, signals={:?}, strength={})", self.0.kind.as_str(), self.0.signals, self.0.strength)
    }
}

#[pyclass(frozen, name = "Decision", module = "deliverypool")]
pub struct PyDecision {
    /// The decision, its DSN verdict taken out into `dsn`.
    decision: Decision,
    dsn: Option<Arc<DsnVerdict>>,
    /// The message decided on: the caller's `bytes` object itself (a reference, not a copy;
    /// a `bytearray` in a batch is copied once, as before). `message_id` and `from_*` read
    /// their fields from it on access, so routing does not pay for them.
    message: PyBackedBytes,
    /// How many recipients the caller gave.
    recipients: usize,
}

/// A decision ready to become a `Decision` object: its verdict shared (made on the worker
/// threads of a batch, where the message is not at hand).
struct Decided(Decision, Option<Arc<DsnVerdict>>, usize);

impl Decided {
    fn new(mut decision: Decision, recipients: usize) -> Self {
        let dsn = decision.detection.dsn.take().map(Arc::new);
        Decided(decision, dsn, recipients)
    }
}

impl PyDecision {
    fn new(Decided(decision, dsn, recipients): Decided, message: PyBackedBytes) -> Self {
        PyDecision { decision, dsn, message, recipients }
    }
}

#[pymethods]
impl PyDecision {
    #[getter]
    fn pool(&self) -> &str {
        &self.decision.pool
    }
    /// normal, high-risk or relay: the class of `pool`.
    #[getter]
    fn pool_class(&self) -> &'static str {
        self.decision.pool_class.as_str()
    }
    /// The name of the rule that chose `pool`, or None for the class's default.
    #[getter]
    fn rule(&self) -> Option<&str> {
        self.decision.rule.as_deref()
    }
    /// Each recipient's pool, in the order given, when the policy routes recipients one by one
    /// (`Policy.per_recipient`); else `pool` once per recipient given.
    #[getter]
    fn recipient_pools<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        if self.decision.recipient_pools.is_empty() {
            PyTuple::new(py, std::iter::repeat(self.decision.pool.as_str()).take(self.recipients))
        } else {
            PyTuple::new(py, self.decision.recipient_pools.iter().map(Name::as_str))
        }
    }
    #[getter]
    fn high_risk(&self) -> bool {
        self.decision.high_risk
    }
    #[getter]
    fn reasons<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.decision.reasons.iter().map(|r| r.as_str()))
    }
    #[getter]
    fn dsn(&self) -> Option<PyDsnVerdict> {
        self.dsn.clone().map(PyDsnVerdict)
    }
    /// dsn, mdn, arf, auto-reply, or None for ordinary mail.
    #[getter]
    fn report_kind(&self) -> Option<&'static str> {
        self.decision.detection.report_kind.map(super::super::dsn::ReportKind::as_str)
    }
    #[getter]
    fn score(&self) -> Option<f64> {
        self.decision.score
    }
    /// caller, header, or None when no score was available.
    #[getter]
    fn score_source(&self) -> Option<&'static str> {
        self.decision.score_source.map(policy::ScoreSource::as_str)
    }
    #[getter]
    fn threshold(&self) -> f64 {
        self.decision.threshold
    }
    #[getter]
    fn sender_domain(&self) -> Option<&'static str> {
        self.decision.sender_domain.map(DomainStatus::as_str)
    }
    /// What SPF and DMARC found (as given to `classify`), or None.
    #[getter]
    fn auth(&self) -> Option<PyAuthFacts> {
        self.decision.auth.map(PyAuthFacts)
    }
    #[getter]
    fn defects<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.decision.defects.iter().map(|d| d.as_str()))
    }
    /// The header Message-ID, as `scan(message).message_id` reads it.
    #[getter]
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.decision.message_id(&self.message)
    }
    /// The first address of the header From field, lowercased.
    #[getter(from_address)]
    fn header_from_address(&self) -> Option<String> {
        self.decision.header_from(&self.message).map(Address::into_string)
    }
    /// The domain of `from_address`, lowercased.
    #[getter(from_domain)]
    fn header_from_domain(&self) -> Option<String> {
        self.decision.header_from(&self.message).map(|address| address.domain().to_owned())
    }
    fn __repr__(&self) -> String {
        format!(
            "Decision(pool={:?}, rule={:?}, reasons={:?}, report_kind={:?}, score={:?}, threshold={})",
            self.decision.pool,
            self.decision.rule,
            self.decision.reasons,
            self.report_kind(),
            self.decision.score,
            self.decision.threshold
        )
    }
}

fn parse_domain_status(value: Option<&str>) -> Result<Option<DomainStatus>, policy::Error> {
    value.map(DomainStatus::parse).transpose()
}

/// Classifies one message. Fast enough (microseconds) that releasing the GIL would cost more
/// than it saves, so it keeps it.
#[pyfunction]
#[pyo3(signature = (message, *, mail_from=None, score=None, tenant=None, policy=None, untrusted_client=false, sender_domain=None, score_unavailable=false, recipients=None, untrusted_route_header=false, auth=None))]
#[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)] // PyO3 passes extracted arguments by value
pub fn classify<'py>(
    py: Python<'py>,
    message: Bound<'py, PyBytes>,
    mail_from: Option<&str>,
    score: Option<f64>,
    tenant: Option<&str>,
    policy: Option<&Bound<'_, PyPolicy>>,
    untrusted_client: bool,
    sender_domain: Option<&str>,
    score_unavailable: bool,
    recipients: Option<Vec<PyBackedStr>>,
    untrusted_route_header: bool,
    auth: Option<PyRef<'_, PyAuthFacts>>,
) -> PyResult<Bound<'py, PyDecision>> {
    let policy = policy_or_default(policy);
    let sender_domain = parse_domain_status(sender_domain).map_err(|e| to_py_err(py, e))?;
    let recipients: Vec<&str> = recipients.iter().flatten().map(|r| &**r).collect();
    let envelope = Envelope {
        mail_from,
        score,
        tenant,
        untrusted_client,
        sender_domain,
        score_unavailable,
        recipients: &recipients,
        untrusted_route_header,
        auth: auth.map(|a| a.0),
    };
    let decision = policy::classify(message.as_bytes(), &envelope, &policy).map_err(|e| to_py_err(py, e))?;
    untracked(py, PyDecision::new(Decided::new(decision, recipients.len()), PyBackedBytes::from(message)))
}

/// Below this many messages a batch runs on the calling thread: handing work to other cores
/// costs more than it saves.
const PARALLEL_MIN_BATCH: usize = 256;

fn per_message<T>(name: &'static str, values: Option<Vec<T>>, count: usize) -> Result<Option<Vec<T>>, Error> {
    match values {
        Some(v) if v.len() != count => Err(Error::LengthMismatch { name, len: v.len(), count }),
        other => Ok(other),
    }
}

/// Classifies a batch. Inputs are extracted first, then the work runs with the GIL released,
/// spread over every core for large batches. Per-message arguments are sequences as long as
/// `messages`.
#[pyfunction]
#[pyo3(signature = (messages, *, mail_from=None, score=None, tenant=None, policy=None, untrusted_client=false, sender_domain=None, score_unavailable=None, recipients=None, untrusted_route_header=false, auth=None))]
#[allow(clippy::too_many_arguments)]
pub fn classify_many<'py>(
    py: Python<'py>,
    messages: &Bound<'_, PyAny>,
    mail_from: Option<Vec<Option<String>>>,
    score: Option<Vec<Option<f64>>>,
    tenant: Option<Vec<Option<String>>>,
    policy: Option<&Bound<'_, PyPolicy>>,
    untrusted_client: bool,
    sender_domain: Option<Vec<Option<String>>>,
    score_unavailable: Option<Vec<bool>>,
    recipients: Option<Vec<Option<Vec<String>>>>,
    untrusted_route_header: bool,
    auth: Option<Vec<Option<PyRef<'_, PyAuthFacts>>>>,
) -> PyResult<Bound<'py, PyList>> {
    let auth: Option<Vec<Option<AuthFacts>>> = auth.map(|v| v.iter().map(|a| a.as_ref().map(|a| a.0)).collect());
    let mut bodies: Vec<PyBackedBytes> = Vec::new();
    for (index, item) in messages.try_iter()?.enumerate() {
        let item = item?;
        let bytes = item.extract::<PyBackedBytes>().map_err(|_| {
            let type_name = item.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string());
            to_py_err(py, Error::NotBytes(type_name).in_batch(index))
        })?;
        bodies.push(bytes);
    }
    let count = bodies.len();
    let lengths_checked = || -> Result<_, Error> {
        let mail_from = per_message("mail_from", mail_from, count)?;
        let score = per_message("score", score, count)?;
        let tenant = per_message("tenant", tenant, count)?;
        let statuses = per_message("sender_domain", sender_domain, count)?
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, s)| parse_domain_status(s.as_deref()).map_err(|e| Error::from(e).in_batch(i)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let unavailable = per_message("score_unavailable", score_unavailable, count)?;
        let recipients = per_message("recipients", recipients, count)?;
        let auth = per_message("auth", auth, count)?;
        Ok((mail_from, score, tenant, statuses, unavailable, recipients, auth))
    };
    let (mail_from, score, tenant, statuses, unavailable, recipients, auth) = lengths_checked().map_err(|e| to_py_err(py, e))?;
    let policy = policy_or_default(policy);

    // The per-message sequences are as long as `bodies` (checked above): `get` always finds.
    let classify_one = |(i, body): (usize, &PyBackedBytes)| {
        let listed: Vec<&str> = recipients.as_ref().and_then(|v| v.get(i)?.as_ref()).map(|r| r.iter().map(String::as_str).collect()).unwrap_or_default();
        let envelope = Envelope {
            recipients: &listed,
            untrusted_route_header,
            mail_from: mail_from.as_ref().and_then(|v| v.get(i)?.as_deref()),
            score: score.as_ref().and_then(|v| *v.get(i)?),
            tenant: tenant.as_ref().and_then(|v| v.get(i)?.as_deref()),
            untrusted_client,
            sender_domain: statuses.as_ref().and_then(|v| *v.get(i)?),
            score_unavailable: unavailable.as_ref().and_then(|v| v.get(i).copied()).unwrap_or(false),
            auth: auth.as_ref().and_then(|v| *v.get(i)?),
        };
        // Wrapped here, on the worker threads, rather than after the GIL is taken back.
        policy::classify(body, &envelope, &policy).map(|d| Decided::new(d, listed.len())).map_err(|e| (i, e))
    };
    let results: Result<Vec<Decided>, (usize, policy::Error)> = py.detach(|| {
        if count >= PARALLEL_MIN_BATCH {
            bodies.par_iter().enumerate().map(classify_one).collect()
        } else {
            bodies.iter().enumerate().map(classify_one).collect()
        }
    });
    let decisions = results.map_err(|(index, error)| to_py_err(py, Error::from(error).in_batch(index)))?;
    let objects = decisions
        .into_iter()
        .zip(bodies)
        .map(|(decided, body)| untracked(py, PyDecision::new(decided, body)))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, objects)
}

/// `pools` (name -> class) and `pool_tenants` (name -> tenant) as the core takes them.
fn pool_specs(py: Python<'_>, pools: Option<&Bound<'_, PyDict>>, tenants: Option<BTreeMap<String, String>>) -> PyResult<Vec<PoolSpec>> {
    let mut tenants = tenants.unwrap_or_default();
    let mut specs = Vec::new();
    for (name, class) in pools.iter().flat_map(|d| d.iter()) {
        let name: String = name.extract()?;
        let class: String = class.extract()?;
        let Some(class) = PoolClass::from_name(&class) else {
            let why = format!("{} is not a pool class: expected one of normal, high-risk, relay", q(&class));
            return Err(to_py_err(py, policy::Error::Routing(RoutingError { rule: None, field: "pools", why })));
        };
        let tenant = tenants.remove(&name);
        specs.push(PoolSpec { name, class, tenant });
    }
    if let Some(name) = tenants.into_keys().next() {
        return Err(to_py_err(py, policy::Error::Routing(RoutingError { rule: None, field: "pool_tenants", why: format!("no pool named {}", q(&name)) })));
    }
    Ok(specs)
}

/// One rule from its mapping (keys as `RuleSpec`'s fields); an unknown key is an error.
fn rule_spec(py: Python<'_>, index: usize, rule: &Bound<'_, PyAny>) -> PyResult<RuleSpec> {
    let refuse = |field: &'static str, why: String| to_py_err(py, policy::Error::Routing(RoutingError { rule: Some(index), field, why }));
    let rule = rule.cast::<PyDict>().map_err(|_| refuse("pool", "a rule must be a dict".into()))?;
    let mut spec = RuleSpec::default();
    for (key, value) in rule.iter() {
        let key: String = key.extract()?;
        let strings = |field: &'static str| -> PyResult<Vec<String>> {
            if value.is_instance_of::<pyo3::types::PyString>() {
                return Err(refuse(field, "must be a list of strings, not a string".into()));
            }
            value.extract().map_err(|_| refuse(field, "must be a list of strings".into()))
        };
        let size = |field: &'static str| -> PyResult<Option<u64>> { value.extract().map_err(|_| refuse(field, "must be a number of bytes".into())) };
        match key.as_str() {
            "name" => spec.name = value.extract().map_err(|_| refuse("name", "must be a string".into()))?,
            "pool" => spec.pool = value.extract().map_err(|_| refuse("pool", "must be a string".into()))?,
            "tenants" => spec.tenants = strings("tenants")?,
            "sender_domains" => spec.sender_domains = strings("sender_domains")?,
            "recipient_domains" => spec.recipient_domains = strings("recipient_domains")?,
            "header_values" => spec.header_values = strings("header_values")?,
            "reasons" => spec.reasons = strings("reasons")?,
            "report_kinds" => spec.report_kinds = strings("report_kinds")?,
            "min_size" => spec.min_size = size("min_size")?,
            "max_size" => spec.max_size = size("max_size")?,
            _ => return Err(refuse("pool", format!("unknown key {}", q(&key)))),
        }
    }
    if spec.pool.is_empty() {
        return Err(refuse("pool", "required: the pool the rule sends mail to".into()));
    }
    Ok(spec)
}
