//! The only place that knows about Python: thin wrappers over the pure-Rust core.

mod cache;
mod dsn;
mod errors;
mod policy;
mod scan;

use pyo3::prelude::*;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::PyClass;

/// A new Python object for `value`, untracked by the cycle collector. PyO3 makes every class a
/// GC type, but the result types hold only Rust data and so can never be part of a cycle; left
/// tracked, a batch of 100,000 decisions spent ~1,100 instructions per decision in collections
/// triggered while the batch was being built (callgrind), and every later full collection
/// walks them again.
#[allow(unsafe_code)]
fn untracked<T: PyClass>(py: Python<'_>, value: impl Into<PyClassInitializer<T>>) -> PyResult<Bound<'_, T>> {
    let object = Bound::new(py, value)?;
    // SAFETY: `object` is a live GC object just made by PyO3; untracking one that references no
    // Python object is what CPython itself does for tuples of atoms. PyO3's dealloc untracks it
    // again, which does nothing for an untracked object.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) };
    Ok(object)
}

#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use super::cache::{PyCacheStats, PyDnsCache};
    #[pymodule_export]
    use super::dsn::detect;
    #[pymodule_export]
    use super::errors::{PolicyError, ScoreError};
    #[pymodule_export]
    use super::policy::{classify, classify_many, PyDecision, PyDsnVerdict, PyPolicy};
    #[pymodule_export]
    use super::scan::{scan, PyContentType, PyHeaderFacts, PyMimePart, PyRecipientStatus};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("PHRASE_GROUPS", super::dsn::phrase_groups(m.py())?)
    }
}
