//! `MessageIdFilter`: the Bloom filter of relayed Message-IDs (rust/seen.rs).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::seen::{SeenError, SeenFilter};

fn to_py_err(error: &SeenError) -> PyErr {
    PyValueError::new_err(error.to_string())
}

/// A compact probabilistic set of Message-IDs (a Bloom filter): no false negatives, false
/// positives near `fp_rate` up to `expected` IDs. IDs are compared without surrounding white
/// space and angle brackets. Thread-safe; `add_many` and `contains_many` release the GIL.
#[pyclass(frozen, name = "MessageIdFilter", module = "deliverypool")]
pub struct PyMessageIdFilter(SeenFilter);

#[pymethods]
impl PyMessageIdFilter {
    #[new]
    #[pyo3(signature = (expected, fp_rate = 0.001))]
    fn new(expected: u64, fp_rate: f64) -> PyResult<Self> {
        SeenFilter::with_capacity(expected, fp_rate).map(Self).map_err(|e| to_py_err(&e))
    }

    /// Adds `message_id`; returns whether it was (probably) there already.
    fn add(&self, message_id: &str) -> bool {
        self.0.add(message_id.as_bytes())
    }

    /// Adds every ID (the GIL released); returns how many were new.
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts the list into an owned Vec
    fn add_many(&self, py: Python<'_>, message_ids: Vec<String>) -> usize {
        py.detach(|| message_ids.iter().filter(|id| !self.0.add(id.as_bytes())).count())
    }

    fn __contains__(&self, message_id: &str) -> bool {
        self.0.contains(message_id.as_bytes())
    }

    /// Membership of every ID, in order (the GIL released).
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts the list into an owned Vec
    fn contains_many(&self, py: Python<'_>, message_ids: Vec<String>) -> Vec<bool> {
        py.detach(|| message_ids.iter().map(|id| self.0.contains(id.as_bytes())).collect())
    }

    /// A new filter with the IDs of both; ValueError unless both have the same size.
    fn union(&self, other: &PyMessageIdFilter) -> PyResult<Self> {
        self.0.union(&other.0).map(Self).map_err(|e| to_py_err(&e))
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        SeenFilter::from_bytes(data).map(Self).map_err(|e| to_py_err(&e))
    }

    #[getter]
    fn bits(&self) -> u64 {
        self.0.bits()
    }

    #[getter]
    fn hashes(&self) -> u32 {
        self.0.hashes()
    }

    /// IDs added that were not present before.
    #[getter]
    fn added(&self) -> u64 {
        self.0.added()
    }

    #[getter]
    fn false_positive_rate(&self) -> f64 {
        self.0.false_positive_rate()
    }

    fn __repr__(&self) -> String {
        format!("MessageIdFilter(bits={}, hashes={}, added={})", self.0.bits(), self.0.hashes(), self.0.added())
    }
}
