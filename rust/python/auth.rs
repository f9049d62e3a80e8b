//! SPF, DMARC and SRS (rust/auth/): the sans-IO checks and their frozen results.
//!
//! A check is driven from Python: `step()` runs the evaluation with the answers given so far
//! and returns the result, or the questions still open as `(type, name)` pairs; `answer()`
//! gives one answer. `deliverypool.auth` drives it from the resolver's cache (no await while
//! every answer is cached) and the resolver (for the rest).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::cache::PyDnsCache;
use super::errors::{to_py_err, Error};
use crate::cache::Kind;
use crate::auth::dmarc::{self, DkimSignature, DmarcOutcome, DmarcRequest, SpfIdentity};
use crate::auth::dns::{Answer, Answers, Query, QueryType, Step};
use crate::auth::spf::{self, Identity, SpfOutcome, SpfRequest, SpfResult};
use crate::auth::srs::{self, Srs};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn bad(py: Python<'_>, text: String) -> PyErr {
    to_py_err(py, Error::Auth(text))
}

/// One answer from its Python form: `outcome` positive/negative/unknown (as the resolver's
/// `Answer` and `TxtAnswer` have it), `detail` `nxdomain` for a negative NXDOMAIN or the
/// failure for unknown, `records` bytes (TXT), address strings (A, AAAA) or names (MX, PTR).
fn to_answer(py: Python<'_>, qtype: QueryType, outcome: &str, detail: &str, records: &Bound<'_, PyAny>) -> PyResult<Answer> {
    match outcome {
        "negative" if detail == "nxdomain" => return Ok(Answer::NxDomain),
        "negative" => return Ok(Answer::NoData),
        "unknown" => return Ok(Answer::Failed(if detail.is_empty() { "error".to_owned() } else { detail.to_owned() })),
        "positive" => {}
        other => return Err(bad(py, format!("invalid outcome {other:?}: expected positive, negative or unknown"))),
    }
    Ok(match qtype {
        QueryType::Txt => Answer::Txt(records.extract::<Vec<Vec<u8>>>()?),
        QueryType::A => {
            let texts = records.extract::<Vec<String>>()?;
            let parsed: Result<Vec<Ipv4Addr>, _> = texts.iter().map(|t| t.parse()).collect();
            Answer::A(parsed.map_err(|_| bad(py, format!("invalid A records {texts:?}")))?)
        }
        QueryType::Aaaa => {
            let texts = records.extract::<Vec<String>>()?;
            let parsed: Result<Vec<Ipv6Addr>, _> = texts.iter().map(|t| t.parse()).collect();
            Answer::Aaaa(parsed.map_err(|_| bad(py, format!("invalid AAAA records {texts:?}")))?)
        }
        QueryType::Mx | QueryType::Ptr => Answer::Names(records.extract::<Vec<String>>()?),
    })
}

fn qtype(py: Python<'_>, name: &str) -> PyResult<QueryType> {
    QueryType::from_name(name).ok_or_else(|| bad(py, format!("invalid record type {name:?}: expected TXT, A, AAAA, MX or PTR")))
}

/// The open questions as a tuple of (type, name) pairs.
fn questions<'py>(py: Python<'py>, queries: &[Query]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, queries.iter().map(|q| (q.qtype.as_str(), q.name.as_str())))
}

/// The cache kind that holds a record type's answers.
fn cache_kind(qtype: QueryType) -> Kind {
    match qtype {
        QueryType::Txt => Kind::Txt,
        QueryType::A => Kind::A,
        QueryType::Aaaa => Kind::Aaaa,
        QueryType::Mx => Kind::Mx,
        QueryType::Ptr => Kind::Ptr,
    }
}

fn text_attr(value: &Bound<'_, PyAny>, name: &Bound<'_, pyo3::types::PyString>) -> Option<String> {
    value.getattr(name).ok()?.extract().ok()
}

/// The answer a cached object gives, read as `deliverypool.auth.dns.AuthDns.cached` reads it
/// (the two are compared in tests/test_auth_dns.py): `TxtAnswer` and `PtrAnswer` by their
/// outcome, detail and records or names; `Addresses` (a tuple with an outcome) for A/AAAA, a
/// plain empty tuple being a failure; MX as delivery caches it (exchangers, an implicit one
/// meaning no MX records, or the DNS error). None for an object of another shape.
fn from_cached(py: Python<'_>, qtype: QueryType, value: &Bound<'_, PyAny>) -> Option<Answer> {
    let outcome = intern!(py, "outcome");
    let detail = intern!(py, "detail");
    match qtype {
        QueryType::Txt | QueryType::Ptr => {
            let records = value.getattr(if qtype == QueryType::Txt { intern!(py, "records") } else { intern!(py, "names") }).ok()?;
            to_answer(py, qtype, &text_attr(value, outcome)?, &text_attr(value, detail)?, &records).ok()
        }
        QueryType::A | QueryType::Aaaa => {
            let tuple = value.cast::<PyTuple>().ok()?;
            match (text_attr(value, outcome), text_attr(value, detail)) {
                (Some(o), Some(d)) => to_answer(py, qtype, &o, &d, value).ok(),
                _ if tuple.is_empty() => Some(Answer::Failed("outcome-not-cached".to_owned())),
                _ => to_answer(py, qtype, "positive", "records", value).ok(),
            }
        }
        QueryType::Mx => {
            if let Ok(tuple) = value.cast::<PyTuple>() {
                let mut hosts = Vec::with_capacity(tuple.len());
                let mut implicit = false;
                for exchanger in tuple.iter() {
                    hosts.push(text_attr(&exchanger, intern!(py, "host"))?);
                    implicit |= exchanger.getattr(intern!(py, "implicit")).ok()?.extract::<bool>().ok()?;
                }
                // No MX records: delivery's implicit MX is not SPF's (RFC 7208 §5.4).
                return Some(if implicit && hosts.len() == 1 { Answer::NoData } else { Answer::Names(hosts) });
            }
            let reason = text_attr(value, intern!(py, "reason"))?;
            let permanent = value.get_type().name().ok()?.to_str().ok()? == "PermanentDnsError";
            Some(match reason.as_str() {
                "nxdomain" | "invalid-domain" if permanent => Answer::NxDomain,
                "no-records" if permanent => Answer::NoData,
                "null-mx" if permanent => Answer::Names(vec![".".to_owned()]),
                _ => Answer::Failed(reason),
            })
        }
    }
}

/// Runs `evaluate` with answers read from `cache` until it finishes (Some) or needs an answer
/// the cache does not hold (None). The answers found are kept for the next run.
fn run_from_cache<T>(py: Python<'_>, cache: &PyDnsCache, pending: &Pending, mut evaluate: impl FnMut(&Answers) -> Step<T>) -> Option<T> {
    // Rounds are bounded by the evaluators' own limits; this only guards against a loop.
    for _ in 0..256 {
        match pending.with(|answers| evaluate(answers)) {
            Step::Done(result) => return Some(result),
            Step::Need(queries) => {
                for query in queries {
                    let object = cache.object(py, cache_kind(query.qtype), &query.name)?;
                    let answer = from_cached(py, query.qtype, object.bind(py))?;
                    pending.with(|answers| answers.insert(query, answer));
                }
            }
        }
    }
    None
}

/// The answers of one check, shared by its methods.
struct Pending(Mutex<Answers>);

impl Pending {
    fn with<R>(&self, f: impl FnOnce(&mut Answers) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn answer(&self, py: Python<'_>, qtype_name: &str, name: &str, outcome: &str, detail: &str, records: &Bound<'_, PyAny>) -> PyResult<()> {
        let qtype = qtype(py, qtype_name)?;
        let answer = to_answer(py, qtype, outcome, detail, records)?;
        self.with(|answers| answers.insert(Query::new(qtype, name.to_ascii_lowercase()), answer));
        Ok(())
    }

    /// Every `(type, name, outcome, records, detail)` of an iterable.
    fn answer_all(&self, py: Python<'_>, answers: &Bound<'_, PyAny>) -> PyResult<()> {
        for item in answers.try_iter()? {
            let (qtype_name, name, outcome, records, detail): (String, String, String, Bound<'_, PyAny>, String) = item?.extract()?;
            self.answer(py, &qtype_name, &name, &outcome, &detail, &records)?;
        }
        Ok(())
    }
}

/// An SPF check (RFC 7208) of one identity, driven by `step()` and `answer()`.
#[pyclass(frozen, name = "SpfCheck", module = "deliverypool")]
pub struct PySpfCheck {
    ip: IpAddr,
    mail_from: String,
    helo: String,
    receiver: String,
    now: u64,
    identity: Identity,
    answers: Pending,
}

#[pymethods]
impl PySpfCheck {
    #[new]
    #[pyo3(signature = (ip, mail_from, helo, *, identity="mailfrom", receiver="", now=None))]
    fn new(py: Python<'_>, ip: &str, mail_from: &str, helo: &str, identity: &str, receiver: &str, now: Option<u64>) -> PyResult<Self> {
        let ip = ip.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| bad(py, format!("invalid IP address {ip:?}")))?;
        let identity = Identity::from_name(identity).ok_or_else(|| bad(py, format!("invalid identity {identity:?}: expected mailfrom or helo")))?;
        Ok(PySpfCheck {
            ip,
            mail_from: mail_from.trim_start_matches('<').trim_end_matches('>').to_owned(),
            helo: helo.to_owned(),
            receiver: receiver.to_owned(),
            now: now.unwrap_or_else(self::now),
            identity,
            answers: Pending(Mutex::new(Answers::new())),
        })
    }

    /// The result (`SpfOutcome`), or the questions still open as `(type, name)` pairs.
    /// `answers` are given first: `(type, name, outcome, records, detail)` tuples, as
    /// `answer()` takes them (one call per round instead of one per answer).
    #[pyo3(signature = (answers=None))]
    fn step<'py>(&self, py: Python<'py>, answers: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(answers) = answers {
            self.answers.answer_all(py, answers)?;
        }
        match self.answers.with(|answers| self.evaluate(answers)) {
            Step::Done(outcome) => Ok(Bound::new(py, PySpfOutcome(outcome))?.into_any()),
            Step::Need(queries) => Ok(questions(py, &queries)?.into_any()),
        }
    }

    /// The result from the answers `cache` holds (the relay's `DnsCache`, as
    /// `deliverypool.auth.dns` fills it), in one call; None when an answer is not cached.
    fn run_cached(&self, py: Python<'_>, cache: &PyDnsCache) -> PyResult<Option<PySpfOutcome>> {
        Ok(run_from_cache(py, cache, &self.answers, |answers| self.evaluate(answers)).map(PySpfOutcome))
    }

    /// Gives the answer to one question (see the module's documentation for the forms).
    #[pyo3(signature = (qtype, name, outcome, records=None, detail=""))]
    fn answer(&self, py: Python<'_>, qtype: &str, name: &str, outcome: &str, records: Option<&Bound<'_, PyAny>>, detail: &str) -> PyResult<()> {
        let empty = PyTuple::empty(py);
        self.answers.answer(py, qtype, name, outcome, detail, records.unwrap_or(empty.as_any()))
    }

    #[getter]
    fn identity(&self) -> &'static str {
        self.identity.as_str()
    }
}

impl PySpfCheck {
    fn evaluate(&self, answers: &Answers) -> Step<SpfOutcome> {
        let request = SpfRequest { ip: self.ip, mail_from: &self.mail_from, helo: &self.helo, receiver: &self.receiver, now: self.now };
        match self.identity {
            Identity::MailFrom => spf::check_mail_from(&request, answers),
            Identity::Helo => spf::check_helo(&request, answers),
        }
    }
}

/// The result of an SPF check.
#[pyclass(frozen, name = "SpfOutcome", module = "deliverypool")]
pub struct PySpfOutcome(SpfOutcome);

#[pymethods]
impl PySpfOutcome {
    /// `mailfrom` or `helo`.
    #[getter]
    fn identity(&self) -> &'static str {
        self.0.identity.as_str()
    }
    /// One of `SPF_RESULTS`.
    #[getter]
    fn result(&self) -> &'static str {
        self.0.result.as_str()
    }
    /// One of `SPF_REASONS`.
    #[getter]
    fn reason(&self) -> &'static str {
        self.0.reason.as_str()
    }
    #[getter]
    fn domain(&self) -> &str {
        &self.0.domain
    }
    #[getter]
    fn sender(&self) -> &str {
        &self.0.sender
    }
    #[getter]
    fn mechanism(&self) -> Option<&str> {
        self.0.mechanism.as_deref()
    }
    #[getter]
    fn explanation(&self) -> Option<&str> {
        self.0.explanation.as_deref()
    }
    #[getter]
    fn detail(&self) -> &str {
        &self.0.detail
    }
    #[getter]
    fn lookups(&self) -> u32 {
        self.0.lookups
    }
    #[getter]
    fn void_lookups(&self) -> u32 {
        self.0.void_lookups
    }
    fn __repr__(&self) -> String {
        let o = &self.0;
        format!("SpfOutcome(identity={:?}, result={:?}, reason={:?}, domain={:?}, mechanism={:?})", o.identity.as_str(), o.result.as_str(), o.reason.as_str(), o.domain, o.mechanism)
    }
}

/// A DMARC check (RFC 7489): the From domain's policy and the result a destination reaches
/// with the given DKIM signatures (`(d=, passes)` pairs) and SPF result (`(domain, result)`).
#[pyclass(frozen, name = "DmarcCheck", module = "deliverypool")]
pub struct PyDmarcCheck {
    from_domain: String,
    dkim: Vec<DkimSignature>,
    spf: Option<SpfIdentity>,
    answers: Pending,
}

#[pymethods]
impl PyDmarcCheck {
    #[new]
    #[pyo3(signature = (from_domain, *, dkim=Vec::new(), spf=None))]
    fn new(py: Python<'_>, from_domain: &str, dkim: Vec<(String, bool)>, spf: Option<(String, String)>) -> PyResult<Self> {
        let spf = match spf {
            None => None,
            Some((domain, result)) => {
                let result = SpfResult::from_name(&result).ok_or_else(|| bad(py, format!("invalid SPF result {result:?}")))?;
                Some(SpfIdentity { domain, result })
            }
        };
        Ok(PyDmarcCheck {
            from_domain: from_domain.to_owned(),
            dkim: dkim.into_iter().map(|(domain, pass)| DkimSignature { domain, pass }).collect(),
            spf,
            answers: Pending(Mutex::new(Answers::new())),
        })
    }

    /// The result (`DmarcOutcome`), or the questions still open as `(type, name)` pairs;
    /// `answers` as `SpfCheck.step` takes them.
    #[pyo3(signature = (answers=None))]
    fn step<'py>(&self, py: Python<'py>, answers: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(answers) = answers {
            self.answers.answer_all(py, answers)?;
        }
        match self.answers.with(|answers| self.evaluate(answers)) {
            Step::Done(outcome) => Ok(Bound::new(py, PyDmarcOutcome(outcome))?.into_any()),
            Step::Need(queries) => Ok(questions(py, &queries)?.into_any()),
        }
    }

    /// The result from the answers `cache` holds, in one call; None when one is not cached.
    fn run_cached(&self, py: Python<'_>, cache: &PyDnsCache) -> PyResult<Option<PyDmarcOutcome>> {
        Ok(run_from_cache(py, cache, &self.answers, |answers| self.evaluate(answers)).map(PyDmarcOutcome))
    }

    #[pyo3(signature = (qtype, name, outcome, records=None, detail=""))]
    fn answer(&self, py: Python<'_>, qtype: &str, name: &str, outcome: &str, records: Option<&Bound<'_, PyAny>>, detail: &str) -> PyResult<()> {
        let empty = PyTuple::empty(py);
        self.answers.answer(py, qtype, name, outcome, detail, records.unwrap_or(empty.as_any()))
    }
}

impl PyDmarcCheck {
    fn evaluate(&self, answers: &Answers) -> Step<DmarcOutcome> {
        let request = DmarcRequest { from_domain: &self.from_domain, dkim: &self.dkim, spf: self.spf.as_ref() };
        dmarc::check(&request, answers)
    }
}

/// The result of a DMARC check.
#[pyclass(frozen, name = "DmarcOutcome", module = "deliverypool")]
pub struct PyDmarcOutcome(DmarcOutcome);

#[pymethods]
impl PyDmarcOutcome {
    /// One of `DMARC_RESULTS`.
    #[getter]
    fn result(&self) -> &'static str {
        self.0.result.as_str()
    }
    /// One of `DMARC_REASONS`.
    #[getter]
    fn reason(&self) -> &'static str {
        self.0.reason.as_str()
    }
    #[getter]
    #[allow(clippy::wrong_self_convention)] // a getter named after the RFC 5322 From field
    fn from_domain(&self) -> &str {
        &self.0.from_domain
    }
    #[getter]
    fn organizational_domain(&self) -> &str {
        &self.0.organizational_domain
    }
    #[getter]
    fn record_domain(&self) -> Option<&str> {
        self.0.record_domain.as_deref()
    }
    /// The policy that applies (`p=`, or `sp=` below the organisational domain), or None.
    #[getter]
    fn policy(&self) -> Option<&'static str> {
        self.0.policy.map(dmarc::Policy::as_str)
    }
    /// `none`, `quarantine` or `reject`: what the destination is asked to do with it.
    #[getter]
    fn disposition(&self) -> &'static str {
        self.0.disposition.as_str()
    }
    #[getter]
    fn p(&self) -> Option<&'static str> {
        self.0.record.as_ref().map(|r| r.p.as_str())
    }
    #[getter]
    fn sp(&self) -> Option<&'static str> {
        self.0.record.as_ref().and_then(|r| r.sp).map(dmarc::Policy::as_str)
    }
    #[getter]
    fn pct(&self) -> Option<u8> {
        self.0.record.as_ref().map(|r| r.pct)
    }
    #[getter]
    fn adkim(&self) -> Option<&'static str> {
        self.0.record.as_ref().map(|r| r.adkim.as_str())
    }
    #[getter]
    fn aspf(&self) -> Option<&'static str> {
        self.0.record.as_ref().map(|r| r.aspf.as_str())
    }
    #[getter]
    fn rua(&self) -> Vec<String> {
        self.0.record.as_ref().map(|r| r.rua.clone()).unwrap_or_default()
    }
    #[getter]
    fn dkim_aligned(&self) -> Option<&str> {
        self.0.dkim_aligned.as_deref()
    }
    #[getter]
    fn spf_aligned(&self) -> bool {
        self.0.spf_aligned
    }
    #[getter]
    fn detail(&self) -> &str {
        &self.0.detail
    }
    fn __repr__(&self) -> String {
        let o = &self.0;
        format!(
            "DmarcOutcome(result={:?}, reason={:?}, from_domain={:?}, policy={:?}, disposition={:?})",
            o.result.as_str(),
            o.reason.as_str(),
            o.from_domain,
            o.policy.map(dmarc::Policy::as_str),
            o.disposition.as_str()
        )
    }
}

/// The organisational domain of a domain (RFC 7489 §3.2, the Public Suffix List).
#[pyfunction]
pub fn organizational_domain(domain: &str) -> String {
    dmarc::organizational_domain(&domain.to_ascii_lowercase()).to_owned()
}

/// The Sender Rewriting Scheme for one domain: `forward()` rewrites an envelope sender to an
/// SRS0/SRS1 address at `domain`, `reverse()` checks one and takes it back one step. The first
/// key signs, every key verifies.
#[pyclass(frozen, name = "SrsRewriter", module = "deliverypool")]
pub struct PySrsRewriter(Srs);

#[pymethods]
impl PySrsRewriter {
    #[new]
    #[pyo3(signature = (domain, keys, *, max_age_days=21, hash_length=4, separator='='))]
    fn new(py: Python<'_>, domain: &str, keys: Vec<Vec<u8>>, max_age_days: u32, hash_length: usize, separator: char) -> PyResult<Self> {
        Srs::new(domain, keys, max_age_days, hash_length, separator).map(Self).map_err(|e| bad(py, e.to_string()))
    }

    #[pyo3(signature = (sender, *, now=None))]
    fn forward(&self, py: Python<'_>, sender: &str, now: Option<u64>) -> PyResult<String> {
        self.0.forward(sender, now.unwrap_or_else(self::now)).map_err(|e| to_py_err(py, Error::Srs(e)))
    }

    #[pyo3(signature = (address, *, now=None))]
    fn reverse(&self, py: Python<'_>, address: &str, now: Option<u64>) -> PyResult<String> {
        self.0.reverse(address, now.unwrap_or_else(self::now)).map_err(|e| to_py_err(py, Error::Srs(e)))
    }

    #[getter]
    fn domain(&self) -> &str {
        self.0.domain()
    }

    fn __repr__(&self) -> String {
        format!("SrsRewriter(domain={:?})", self.0.domain())
    }
}

/// Whether an address is an SRS0 or SRS1 address, by its form alone.
#[pyfunction]
pub fn is_srs(address: &str) -> bool {
    srs::is_srs(address)
}
