//! DKIM (rust/auth/dkim/): `DkimKey`, `dkim_sign`, `dkim_key_queries`, `dkim_verify` and their
//! frozen results. Signing and verifying release the GIL: the message's bytes are read where
//! they lie (a `bytes` object cannot change), nothing of the body is copied.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::errors::{to_py_err, Error};
use crate::auth::dkim::{self, Algorithm, Canon, DkimResult, KeyLookup, SignOptions, SigningKey, VerifyReason};

/// A DKIM private key and what it signs: `d=`, `s=`, the fields (From is always signed, and
/// over-signed), the canonicalisation, `x=` as seconds after `t=`. Built once (from PKCS#8 DER)
/// and used for every message; thread-safe.
#[pyclass(frozen, name = "DkimKey", module = "deliverypool")]
pub struct PyDkimKey(Arc<SigningKey>);

fn canonicalization(value: &str) -> Option<(Canon, Canon)> {
    let (header, body) = value.split_once('/').unwrap_or((value, "simple"));
    Some((Canon::from_name(header)?, Canon::from_name(body)?))
}

#[pymethods]
impl PyDkimKey {
    #[new]
    #[pyo3(signature = (der, *, algorithm, domain, selector, headers, oversign = Vec::new(), canonicalization = "relaxed/relaxed", expire = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        der: &[u8],
        algorithm: &str,
        domain: String,
        selector: String,
        headers: Vec<String>,
        oversign: Vec<String>,
        canonicalization: &str,
        expire: Option<u64>,
    ) -> PyResult<Self> {
        let algorithm = Algorithm::from_name(algorithm).ok_or_else(|| to_py_err(py, Error::DkimOption(format!("unknown algorithm {algorithm:?}"))))?;
        let (header_canon, body_canon) = self::canonicalization(canonicalization)
            .ok_or_else(|| to_py_err(py, Error::DkimOption(format!("unknown canonicalization {canonicalization:?}"))))?;
        let options = SignOptions { domain, selector, headers, oversign, header_canon, body_canon, expire };
        SigningKey::new(algorithm, der, options).map(|key| PyDkimKey(Arc::new(key))).map_err(|e| to_py_err(py, e))
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.0.algorithm().as_str()
    }
    #[getter]
    fn domain(&self) -> &str {
        &self.0.options().domain
    }
    #[getter]
    fn selector(&self) -> &str {
        &self.0.options().selector
    }
    /// RSA: the modulus size; Ed25519: 256.
    #[getter]
    fn bits(&self) -> usize {
        self.0.bits()
    }
    /// The fields signed, lowercased, From first.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.options().headers)
    }
    #[getter]
    fn oversign<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.options().oversign)
    }
    #[getter]
    fn canonicalization(&self) -> String {
        let options = self.0.options();
        format!("{}/{}", options.header_canon, options.body_canon)
    }
    #[getter]
    fn expire(&self) -> Option<u64> {
        self.0.options().expire
    }
    fn __repr__(&self) -> String {
        let options = self.0.options();
        format!("DkimKey(d={:?}, s={:?}, {}, {} bits)", options.domain, options.selector, self.0.algorithm(), self.0.bits())
    }
}

/// What `dkim_sign` did: `header` holds the DKIM-Signature fields to put in front of the
/// message (empty when unsigned), `problem` why the message was not signed (`DKIM_SIGN_PROBLEMS`).
#[pyclass(frozen, name = "DkimSigning", module = "deliverypool")]
pub struct PyDkimSigning {
    header: Py<PyBytes>,
    problem: Option<&'static str>,
    count: usize,
}

#[pymethods]
impl PyDkimSigning {
    #[getter]
    fn header(&self, py: Python<'_>) -> Py<PyBytes> {
        self.header.clone_ref(py)
    }
    #[getter]
    fn problem(&self) -> Option<&'static str> {
        self.problem
    }
    /// How many signatures `header` holds.
    #[getter]
    fn count(&self) -> usize {
        self.count
    }
    fn __repr__(&self) -> String {
        match self.problem {
            Some(problem) => format!("DkimSigning(problem={problem:?})"),
            None => format!("DkimSigning(count={})", self.count),
        }
    }
}

/// Signs `message` with each key (`now`: `t=`, seconds since the epoch), the GIL released. A
/// message that must not be signed is not an error: `problem` says why.
#[pyfunction]
#[allow(clippy::needless_pass_by_value)] // PyO3 extracts the keys into an owned Vec
pub fn dkim_sign(py: Python<'_>, message: &Bound<'_, PyBytes>, keys: Vec<PyRef<'_, PyDkimKey>>, now: u64) -> PyResult<PyDkimSigning> {
    let keys: Vec<Arc<SigningKey>> = keys.iter().map(|key| Arc::clone(&key.0)).collect();
    let bytes = message.as_bytes();
    let result = py.detach(|| {
        let refs: Vec<&SigningKey> = keys.iter().map(Arc::as_ref).collect();
        dkim::sign(bytes, &refs, now)
    });
    Ok(match result {
        Ok(signatures) => {
            let length = signatures.iter().map(|s| s.field.len()).sum();
            let header = PyBytes::new_with(py, length, |buffer| {
                let mut at = 0;
                for signature in &signatures {
                    if let Some(slot) = buffer.get_mut(at..at + signature.field.len()) {
                        slot.copy_from_slice(&signature.field);
                    }
                    at += signature.field.len();
                }
                Ok(())
            })?;
            PyDkimSigning { header: header.unbind(), problem: None, count: signatures.len() }
        }
        Err(problem) => PyDkimSigning { header: PyBytes::new(py, b"").unbind(), problem: Some(problem.as_str()), count: 0 },
    })
}

/// The key records to look up (`SELECTOR._domainkey.DOMAIN`) for the first `max` signatures.
#[pyfunction]
#[pyo3(signature = (message, max = 8))]
pub fn dkim_key_queries(message: &[u8], max: usize) -> Vec<String> {
    dkim::key_queries(message, max)
}

/// One signature's check: `d=`, `s=`, `a=` (as written), the result in RFC 8601's words and,
/// unless it plainly passed, the reason (`DKIM_RESULTS`, `DKIM_REASONS`).
#[pyclass(frozen, name = "DkimVerdict", module = "deliverypool")]
pub struct PyDkimVerdict(dkim::Verdict);

#[pymethods]
impl PyDkimVerdict {
    #[getter]
    fn domain(&self) -> &str {
        &self.0.domain
    }
    #[getter]
    fn selector(&self) -> &str {
        &self.0.selector
    }
    #[getter]
    fn algorithm(&self) -> &str {
        &self.0.algorithm
    }
    #[getter]
    fn result(&self) -> &'static str {
        self.0.result.as_str()
    }
    #[getter]
    fn reason(&self) -> Option<&'static str> {
        self.0.reason.map(VerifyReason::as_str)
    }
    fn __repr__(&self) -> String {
        let verdict = &self.0;
        format!("DkimVerdict(d={:?}, s={:?}, a={:?}, {}{})", verdict.domain, verdict.selector, verdict.algorithm, verdict.result, verdict.reason.map(|r| format!(" ({r})")).unwrap_or_default())
    }
}

/// Checks the signatures of `message` (the first `max`; any more are `policy`), the GIL
/// released. `keys` maps each name `dkim_key_queries` gave to its TXT records (a tuple of
/// bytes, empty when there are none) or to None when the lookup failed; a name missing from
/// it counts as failed.
#[pyfunction]
#[pyo3(signature = (message, keys, now, max = 8))]
pub fn dkim_verify(py: Python<'_>, message: &Bound<'_, PyBytes>, keys: &Bound<'_, PyDict>, now: u64, max: usize) -> PyResult<Vec<PyDkimVerdict>> {
    let mut records: HashMap<String, Option<Vec<Vec<u8>>>> = HashMap::with_capacity(keys.len());
    for (name, value) in keys.iter() {
        let name: String = name.extract()?;
        let value: Option<Vec<Vec<u8>>> = if value.is_none() { None } else { Some(value.extract::<Vec<Vec<u8>>>()?) };
        records.insert(name.to_ascii_lowercase(), value);
    }
    let bytes = message.as_bytes();
    let verdicts = py.detach(|| {
        let lookup = |name: &str| match records.get(name) {
            Some(Some(found)) if found.is_empty() => KeyLookup::NotFound,
            Some(Some(found)) => KeyLookup::Records(found.iter().map(Vec::as_slice).collect()),
            Some(None) | None => KeyLookup::TempError,
        };
        dkim::verify(bytes, &lookup, now, max)
    });
    Ok(verdicts.into_iter().map(PyDkimVerdict).collect())
}

/// The closed sets, for the module's constants.
pub fn tables() -> [(&'static str, Vec<&'static str>); 4] {
    [
        ("DKIM_ALGORITHMS", Algorithm::ALL.iter().map(|a| a.as_str()).collect()),
        ("DKIM_RESULTS", DkimResult::ALL.iter().map(|r| r.as_str()).collect()),
        ("DKIM_REASONS", VerifyReason::ALL.iter().map(|r| r.as_str()).collect()),
        ("DKIM_SIGN_PROBLEMS", dkim::SignProblem::ALL.iter().map(|p| p.as_str()).collect()),
    ]
}
