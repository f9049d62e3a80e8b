//! The only place that knows about Python: thin wrappers over the pure-Rust core.

mod cache;
mod errors;
mod policy;
mod scan;

#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use super::cache::{PyCacheStats, PyDnsCache};
    #[pymodule_export]
    use super::errors::{PolicyError, ScoreError};
    #[pymodule_export]
    use super::policy::{classify, classify_many, PyDecision, PyDsnVerdict, PyPolicy};
    #[pymodule_export]
    use super::scan::{scan, PyContentType, PyHeaderFacts, PyMimePart, PyRecipientStatus};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
